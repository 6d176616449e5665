#!/bin/sh
# The CPU fast path as a DVC experiment: MobileNetV2 from ImageNet weights, its first seven blocks
# frozen (no backward through them), trained on 176 px crops for 6 epochs (the first for the head
# alone) and evaluated at 224 (FixRes), in fp32, what a CPU without bf16 runs. Measured on a 2-core
# AMD EPYC in fp32: a 2.6-2.9 min train stage, 94.5 % test accuracy, mean of 2 seeds (docs/training.md).
#
#   uv run sh presets/mobilenet_v2-cpu-fast.sh [dvc exp run options: --queue, -S key=value, a stage]
#
# Options after the preset's win: `-S data.source=/path/to/flower_photos` and
# `-S model.weights=/path/to/mobilenet_v2-imagenet.pth` to run offline, `-S train.precision=auto` on
# a GPU. Every recipe key is set, so params.yaml cannot leak in.
exec dvc exp run -n mobilenet_v2-cpu-fast \
  -S data.image_size=224 \
  -S model.arch=mobilenet_v2 \
  -S model.weights=DEFAULT \
  -S model.head=linear \
  -S model.dropout=0.0 \
  -S train.epochs=6 \
  -S train.batch_size=32 \
  -S train.optimizer=sgd \
  -S train.lr=0.01 \
  -S train.momentum=0.9 \
  -S train.weight_decay=0.0 \
  -S train.scheduler=warmup_cosine \
  -S train.warmup_epochs=1 \
  -S train.label_smoothing=0.1 \
  -S train.early_stopping=0 \
  -S train.backbone_lr_factor=0.3 \
  -S train.head_epochs=1 \
  -S train.ema_decay=0.99 \
  -S train.mixup=0.0 \
  -S train.cutmix=0.0 \
  -S train.image_scale=0.785 \
  -S 'train.freeze=[features.0, features.1, features.2, features.3, features.4, features.5, features.6]' \
  -S train.precision=fp32 \
  -S train.seed=0 \
  -S 'train.augment=[{RandomResizedCrop: {scale: [0.5, 1.0]}}, {RandomHorizontalFlip: {}}]' \
  "$@"
