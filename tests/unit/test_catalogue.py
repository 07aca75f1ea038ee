"""graft list reads a catalogue written from the registries: it must match them, and must not
need torch to print it."""

import subprocess
import sys

from graftkit.cli import catalogue


def test_catalogue_matches_the_registries():
    assert catalogue.load() == catalogue.build(), (
        "src/graftkit/cli/catalogue.json is stale: run python -m graftkit.cli.catalogue --write")


def test_graft_list_prints_every_entry_without_importing_torch():
    code = ("import sys; from typer.testing import CliRunner; from graftkit.cli.main import app; "
            "r = CliRunner().invoke(app, ['list']); assert r.exit_code == 0, r.output; "
            "print(r.output); print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True
                         ).stdout
    assert out.rstrip().endswith("NO-TORCH")
    for section in catalogue.build():
        assert section["title"] in out
        for name, _ in section["rows"]:
            assert name in out
