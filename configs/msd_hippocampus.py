"""MSD Task04 Hippocampus: one MRI channel, 2 classes (anterior, posterior), small volumes.

data.root is the Task04_Hippocampus folder (dataset.json, imagesTr/, labelsTr/). The cropped
volumes are about 35x50x35 voxels of 1 mm and differ in size, so their axial slices are centre
padded (not resized) into 64x64. Run lines:
  python launch.py --config=configs/msd_hippocampus.py --config.data.root=/data/Task04_Hippocampus
  python launch.py --config=configs/msd_hippocampus.py:cpu --config.data.root=/data/Task04_Hippocampus

The paper's network and training protocol (configs/default.py `paper_training`) with a 3-logit
softmax head. Variant ':cpu': a U-Net of base width 16, depth 3 (the slices stay 64x64).
"""

from ml_collections import config_dict

from configs import default


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    config = default.paper_training(default.get_config())
    data = config.data
    data.root = config_dict.placeholder(str)  # Task04_Hippocampus folder: --config.data.root=PATH
    data.layout = "msd"
    data.classes = "all"  # anterior 1, posterior 2 (dataset.json labels)
    data.size = (64, 64)  # pixels: every slice fits, padded with zeros around its centre
    data.resample = "crop"  # centre crop/pad: no interpolation of these small slices
    data.normalisation = "zscore"  # MRI: over the non-zero voxels of each volume

    config.train.batch_size = 32  # slices per step
    config.al.initial_size = 200  # labelled slices at round 0 (~2 % of ~9,000 slices)
    config.al.query_size = 100  # slices queried per round

    if arg == "cpu":
        config.model.base_width = 16
        config.model.depth = 3
    elif arg:
        raise ValueError(
            f"configs/msd_hippocampus.py: unknown config argument {arg!r}; expected 'cpu' or none"
        )
    return config
