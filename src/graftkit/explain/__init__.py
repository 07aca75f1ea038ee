"""Explain a run's decisions: attribution heatmaps, overlays and faithfulness scores.

``explain(model, x, target, method)`` -> heatmap; ``overlay`` draws it; ``faithfulness`` scores
it (deletion/insertion); ``explain_run`` does all three for image files of a finished run.
Text runs: ``token_attributions`` (integrated gradients on the token embeddings),
``merge_words``, ``text_faithfulness``; ``explain_run`` writes HTML snippets for them.
"""

from __future__ import annotations

from .api import cli_explain, explain_run
from .faithfulness import faithfulness
from .images import gradcam_overlays
from .methods import METHODS, explain
from .overlay import model_view, overlay
from .text import merge_words, text_faithfulness, token_attributions

__all__ = ["METHODS", "cli_explain", "explain", "explain_run", "faithfulness",
           "gradcam_overlays", "merge_words", "model_view", "overlay", "text_faithfulness",
           "token_attributions"]
