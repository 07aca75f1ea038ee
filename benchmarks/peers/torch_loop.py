"""A plain PyTorch fine-tuning loop, as a user writes it from the tutorials: torchvision's
ImageFolder, RandomResizedCrop + flip, the timm backbone with its pretrained weights (the same
efficientnet_lite0 weights graft starts from) and a new head, every layer trained with AdamW
(lr 3e-4) for 5 epochs, batch 32, then val accuracy at 224 px (resize 256, centre crop).

    python torch_loop.py THREADS DATA_DIR WEIGHTS.safetensors ARCH RESULT.json
"""

import json
import sys
import time
from pathlib import Path

import torch

threads, data, weights, arch, out = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], \
    sys.argv[4], sys.argv[5]
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)

import timm  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

t0 = time.perf_counter()
norm = transforms.Normalize([0.5] * 3, [0.5] * 3)  # tf_efficientnet_lite's input normalisation
train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), norm])
val_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                             transforms.ToTensor(), norm])
train = datasets.ImageFolder(data / "train", train_tf)
val = datasets.ImageFolder(data / "val", val_tf)
model = timm.create_model(arch, pretrained=False, num_classes=0)
missing, _ = model.load_state_dict(load_file(weights), strict=False)
assert not missing, missing  # every backbone weight is the pretrained one
model.reset_classifier(len(train.classes))
opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
for _epoch in range(5):
    model.train()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
model.eval()
correct = 0
with torch.no_grad():
    for x, y in torch.utils.data.DataLoader(val, batch_size=64):
        correct += int((model(x).argmax(1) == y).sum())
json.dump({"accuracy": correct / len(val), "in_process_s": time.perf_counter() - t0},
          open(out, "w"))
