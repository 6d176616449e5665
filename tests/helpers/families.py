"""One model of each torchvision family, at the smallest input side it takes: what the tests of
every family (training, export, Grad-CAM) run."""

FAMILIES = [  # (model, input side): each family's smallest member at its smallest side
    ("resnet18", 16),
    ("vgg11", 32),
    ("squeezenet1_1", 64),  # its head's output is a map, pooled after: at 64 px a 3 x 3 one
    ("densenet121", 29),
    ("mobilenet_v2", 16),
    ("mobilenet_v3_small", 16),
    ("efficientnet_b0", 16),
    ("regnet_x_400mf", 17),
    ("shufflenet_v2_x0_5", 16),
    ("mnasnet0_5", 16),
    ("convnext_tiny", 32),  # ends in LayerNorm
    ("swin_t", 16),  # ends in LayerNorm; pads to its attention windows
    ("vit_b_32", 224),  # one input side only
    ("maxvit_t", 224),  # one input side only
    ("googlenet", 16),  # auxiliary heads
    ("inception_v3", 75),  # auxiliary heads
]
