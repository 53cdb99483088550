r"""The PyTorch side of the CPU comparisons: the same models, timed the same way.

  python launch/bench_pytorch.py --out torch_r18.json      # in an env with torch
  python -m launch.bench --config configs/resnet18_pair.py --methods baseline \
      --steps 2 --windows 5 --warmup 1

  python launch/bench_pytorch.py --model mlp --seeds 5 --steps 20 --windows 7 --warmup 20
  python -m launch.bench --config configs/mosei.py --methods baseline --seeds 5 \
      --steps 20 --windows 7 --warmup 20

`--model mlp` is the MOSEI-size late-fusion MLP of `configs/mosei.py`, as
the project's step computes it: per modality (text 768, audio 74, vision 35)
Linear(256) → ReLU → Dropout(0.1) → Linear(128) → ReLU, the three 128-d
features concatenated into one Linear to 3 classes, loss = CE(fused) + Σ_m
CE(unimodal_m) with the unimodal logits read off the fusion weight's
per-modality block (+ b/3), SGD momentum 0.9, weight decay 1e-4; and the
decoupled linear probes on the detached features, refreshed every 20 steps
with 10 Adam steps on the first half of the batch and scored on the second.
`--seeds S` steps S independent copies one after another (S sequential runs'
steps), against which `launch.bench --seeds S` times the project's S seeds
in one program.

PyTorch is not a dependency of asgml_jax; run this with any Python that has
`torch` (the CPU wheel is enough). It builds the late-fusion pair the OGM-GE
reference trains, written out here so no torchvision is needed: per modality
a ResNet-18 (7x7/2 stem, BatchNorm, ReLU, 3x3/2 max-pool, four stages of two
basic blocks, 64..512 channels, global average pooling), the two 512-d
features concatenated into one linear classifier, cross-entropy, and SGD
with momentum 0.9 and weight decay 1e-4 — the step `configs/resnet18_pair.py`
compiles in JAX (audio 1x128x128, one 3x112x112 frame, batch 64, f32). A
step is forward, backward and the optimizer update on a fixed random batch;
after `--warmup` steps, `--windows` windows of `--steps` steps are timed
and the median window is reported, as `launch.bench` does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def _shape(text: str) -> tuple[int, ...]:
  return tuple(int(v) for v in text.split(","))


def build_model(num_classes: int, channels: tuple[int, int]):
  import torch
  from torch import nn

  class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.down = None
      if stride != 1 or cin != cout:
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.down is None else self.down(x)))

  def resnet18(cin):
    layers = [nn.Conv2d(cin, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    width = 64
    for stage, out in enumerate((64, 128, 256, 512)):
      for block in range(2):
        layers.append(BasicBlock(width, out, 2 if stage > 0 and block == 0 else 1))
        width = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)

  class Pair(nn.Module):
    def __init__(self):
      super().__init__()
      self.audio, self.visual = resnet18(channels[0]), resnet18(channels[1])
      self.head = nn.Linear(1024, num_classes)

    def forward(self, audio, visual):
      return self.head(torch.cat([self.audio(audio), self.visual(visual)], dim=1))

  return Pair()


MOSEI_DIMS = {"text": 768, "audio": 74, "vision": 35}


def build_mlp_model(num_classes: int, hidden: int = 256, features: int = 128,
                    dropout: float = 0.1):
  import torch
  from torch import nn

  class LateFusionMLP(nn.Module):
    def __init__(self):
      super().__init__()
      self.encoders = nn.ModuleDict({
          m: nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout),
                           nn.Linear(hidden, features), nn.ReLU())
          for m, d in MOSEI_DIMS.items()})
      self.fusion = nn.Linear(features * len(MOSEI_DIMS), num_classes)

    def forward(self, inputs):
      feats = [self.encoders[m](inputs[m]) for m in MOSEI_DIMS]
      fused = self.fusion(torch.cat(feats, dim=1))
      n = len(feats)
      unimodal = [f @ self.fusion.weight[:, i * features:(i + 1) * features].T
                  + self.fusion.bias / n for i, f in enumerate(feats)]
      return fused, unimodal, feats

  return LateFusionMLP()


def mlp_step_fn(num_classes: int, batch: int, seed: int, probe_every: int = 20,
                probe_steps: int = 10):
  """One seed's MOSEI MLP step (model, probes, optimizers and a fixed batch)."""
  import torch
  from torch.nn import functional as F
  torch.manual_seed(seed)
  model = build_mlp_model(num_classes)
  probes = torch.nn.ModuleList([torch.nn.Linear(128, num_classes) for _ in MOSEI_DIMS])
  optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
  probe_optimizer = torch.optim.Adam(probes.parameters(), lr=1e-3)
  inputs = {m: torch.randn(batch, d) for m, d in MOSEI_DIMS.items()}
  labels = torch.randint(0, num_classes, (batch,))
  count = [0]
  model.train()

  def step():
    optimizer.zero_grad(set_to_none=True)
    fused, unimodal, feats = model(inputs)
    loss = F.cross_entropy(fused, labels) + sum(F.cross_entropy(u, labels) for u in unimodal)
    loss.backward()
    optimizer.step()
    count[0] += 1
    if count[0] % probe_every == 0:
      half = batch // 2
      detached = [f.detach() for f in feats]
      for _ in range(probe_steps):
        probe_optimizer.zero_grad(set_to_none=True)
        sum(F.cross_entropy(p(f[:half]), labels[:half])
            for p, f in zip(probes, detached)).backward()
        probe_optimizer.step()
      with torch.no_grad():   # the held-out probe scores the project computes too
        scores = [(p(f[half:]).argmax(1) == labels[half:]).float().mean()
                  for p, f in zip(probes, detached)]
      del scores

  return step


def _resnet_pair_step(args):
  """The ResNet-18 pair's step on a fixed batch, and what the result records of it."""
  import torch
  torch.manual_seed(0)
  classes = args.classes or 6
  model = build_model(classes, (args.audio[0], args.visual[0]))
  audio = torch.randn(args.batch, *args.audio)
  visual = torch.randn(args.batch, *args.visual)
  labels = torch.randint(0, classes, (args.batch,))
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
    audio = audio.contiguous(memory_format=torch.channels_last)
    visual = visual.contiguous(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
  model.train()

  def step():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(audio, visual), labels).backward()
    optimizer.step()

  return step, {"mkldnn": torch.backends.mkldnn.is_available(),
                "channels_last": args.channels_last, "audio": args.audio,
                "visual": args.visual}


def _mlp_seeds_step(args):
  """`--seeds` MOSEI MLPs stepped one after another, and what the result records."""
  steps = [mlp_step_fn(args.classes or 3, args.batch, seed) for seed in range(args.seeds)]

  def all_seeds():
    for step in steps:
      step()

  return all_seeds, {"model": "mosei_mlp"}


def _timed(step, args) -> list[float]:
  """Seconds per step of each timed window, after the warmup steps."""
  for _ in range(args.warmup):
    step()
  windows = []
  for _ in range(args.windows):
    start = time.perf_counter()
    for _ in range(args.steps):
      step()
    windows.append((time.perf_counter() - start) / args.steps)
  return windows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=("resnet18_pair", "mlp"), default="resnet18_pair")
  parser.add_argument("--seeds", type=int, default=1,
                      help="mlp: step this many independent models one after another")
  parser.add_argument("--audio", type=_shape, default=(1, 128, 128), help="C,H,W")
  parser.add_argument("--visual", type=_shape, default=(3, 112, 112), help="C,H,W")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--classes", type=int, default=None,
                      help="default: 6 (CREMA-D) for the pair, 3 (MOSEI) for the MLP")
  parser.add_argument("--steps", type=int, default=2, help="steps per timed window")
  parser.add_argument("--windows", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--channels_last", action="store_true",
                      help="NHWC memory format (oneDNN's preferred layout)")
  parser.add_argument("--out", help="write the result to this JSON file")
  args = parser.parse_args()

  import torch
  torch.set_num_threads(args.threads)
  build = _mlp_seeds_step if args.model == "mlp" else _resnet_pair_step
  step, fields = build(args)
  windows = _timed(step, args)
  step_s = statistics.median(windows)
  seeds = args.seeds if args.model == "mlp" else 1
  result = {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
            "host": platform.machine(), "batch_size": args.batch, **fields,
            "seeds": seeds, "step_ms": step_s * 1e3, "step_ms_per_seed": step_s * 1e3 / seeds,
            "window_step_ms": [w * 1e3 for w in windows],
            "examples_per_s": seeds * args.batch / step_s}
  print(json.dumps(result), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
