"""fastai's default transfer-learning recipe on an image folder: ``vision_learner`` +
``fine_tune(5, freeze_epochs=1)``, the backbone's pretrained weights read from a safetensors file
(the same efficientnet_lite0 weights graft starts from), 224 px, batch 32, fastai's augmentation.
Runs in the peers' virtual environment (benchmarks/vs_peers.py --install-peers).

    python fastai_fine_tune.py THREADS DATA_DIR WEIGHTS.safetensors ARCH RESULT.json
"""

import json
import sys
import time

import torch

threads, data, weights, arch, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], \
    sys.argv[5]
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)

from fastai.vision.all import (  # noqa: E402
    ImageDataLoaders,
    Normalize,
    Resize,
    accuracy,
    aug_transforms,
    vision_learner,
)
from safetensors.torch import load_file  # noqa: E402

t0 = time.perf_counter()
stats = ([0.5] * 3, [0.5] * 3)  # tf_efficientnet_lite's input normalisation
dls = ImageDataLoaders.from_folder(data, train="train", valid="val", item_tfms=Resize(256),
                                   batch_tfms=[*aug_transforms(size=224),
                                               Normalize.from_stats(*stats)],
                                   bs=32, num_workers=0, device=torch.device("cpu"))
learn = vision_learner(dls, arch, pretrained=False, normalize=False, metrics=accuracy)
body = learn.model[0].model  # fastai's TimmBody around the timm model (no classifier)
missing, unexpected = body.load_state_dict(load_file(weights), strict=False)
assert not missing, missing  # every backbone weight is the pretrained one
learn.fine_tune(5, freeze_epochs=1)
loss, acc = learn.validate()
json.dump({"accuracy": float(acc), "val_loss": float(loss), "in_process_s":
           time.perf_counter() - t0, "unexpected_keys": len(unexpected)}, open(out, "w"))
