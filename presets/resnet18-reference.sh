#!/bin/sh
# The ResNet-18 reference recipe as a DVC experiment: ImageNet weights, every layer fine-tuned with
# SGD (lr 0.001, momentum 0.9), batch 32, 50 epochs, a constant learning rate, five augmentations.
#
#   uv run sh presets/resnet18-reference.sh [dvc exp run options: --queue, -S key=value, a stage]
#
# Options after the preset's win: `-S data.source=/path/to/flower_photos` to run offline,
# `-n another-name` to run it twice. Every recipe key is set, so params.yaml cannot leak in.
exec dvc exp run -n resnet18-reference \
  -S model.arch=resnet18 \
  -S model.weights=DEFAULT \
  -S model.head=linear \
  -S model.dropout=0.0 \
  -S train.epochs=50 \
  -S train.batch_size=32 \
  -S train.optimizer=sgd \
  -S train.lr=0.001 \
  -S train.momentum=0.9 \
  -S train.weight_decay=0.0 \
  -S train.scheduler=none \
  -S train.label_smoothing=0.0 \
  -S train.early_stopping=0 \
  -S train.backbone_lr_factor=1.0 \
  -S train.head_epochs=0 \
  -S train.ema_decay=0.0 \
  -S train.mixup=0.0 \
  -S train.cutmix=0.0 \
  -S train.image_scale=1.0 \
  -S train.freeze=none \
  -S train.seed=0 \
  -S 'train.augment=[{RandomResizedCrop: {}}, {RandomHorizontalFlip: {}}, {RandomVerticalFlip: {}}, {RandomRotation: {degrees: 30}}, {ColorJitter: {brightness: 0.2, contrast: 0.2, saturation: 0.2}}]' \
  "$@"
