#!/bin/sh
# The ResNet-152 reference recipe as a DVC experiment: ImageNet weights with layer1 and layer2
# frozen, an MLP head (512 hidden units, dropout 0.3), Adam (lr 0.0001, weight decay 0.0001) with
# 3 epochs of linear warm-up then cosine decay over 30 epochs, random erasing among the augmentations.
#
#   uv run sh presets/resnet152-reference.sh [dvc exp run options: --queue, -S key=value, a stage]
#
# Options after the preset's win: `-S data.source=/path/to/flower_photos` to run offline,
# `-n another-name` to run it twice. Every recipe key is set, so params.yaml cannot leak in.
exec dvc exp run -n resnet152-reference \
  -S model.arch=resnet152 \
  -S model.weights=DEFAULT \
  -S model.head=mlp \
  -S model.hidden=512 \
  -S model.dropout=0.3 \
  -S train.epochs=30 \
  -S train.batch_size=32 \
  -S train.optimizer=adam \
  -S train.lr=0.0001 \
  -S train.weight_decay=0.0001 \
  -S train.scheduler=warmup_cosine \
  -S train.warmup_epochs=3 \
  -S train.min_lr=0.0 \
  -S train.label_smoothing=0.0 \
  -S train.early_stopping=0 \
  -S train.backbone_lr_factor=1.0 \
  -S train.head_epochs=0 \
  -S train.ema_decay=0.0 \
  -S train.mixup=0.0 \
  -S train.cutmix=0.0 \
  -S train.image_scale=1.0 \
  -S 'train.freeze=[layer1, layer2]' \
  -S train.seed=0 \
  -S 'train.augment=[{RandomResizedCrop: {}}, {RandomHorizontalFlip: {}}, {ColorJitter: {brightness: 0.2, contrast: 0.2, saturation: 0.2}}, {RandomErasing: {p: 0.25}}]' \
  "$@"
