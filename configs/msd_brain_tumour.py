"""MSD Task01 Brain Tumour: 4 MRI channels, 3 tumour classes (240x240 axial slices).

data.root is the Task01_BrainTumour folder (dataset.json, imagesTr/, labelsTr/): 4D images with
the channels FLAIR, T1w, t1gd, T2w and labels 1 edema, 2 non-enhancing tumour, 3 enhancing
tumour. Run lines:
  python launch.py --config=configs/msd_brain_tumour.py --config.data.root=/data/Task01_BrainTumour
  python launch.py --config=configs/msd_brain_tumour.py:cpu --config.data.root=/data/Task01_BrainTumour
  python launch.py --config=configs/msd_brain_tumour.py --config.data.root=/data/Task01_BrainTumour \
      --config.al.class_balanced=True       # the target half round-robin over the classes
  python launch.py --config=configs/msd_brain_tumour.py --config.data.root=/data/Task01_BrainTumour \
      --config.data.modality=FLAIR --config.data.classes=1+2+3   # the paper's binary setting

The paper's network and training protocol (configs/default.py `paper_training`) with the BraTS
setting's active-learning sizes; the head has 4 logits (softmax) and the first convolution 4
input channels. Variant ':cpu': 128x128 slices and a U-Net of base width 16, depth 3.
"""

from ml_collections import config_dict

from configs import default


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    config = default.paper_training(default.get_config())
    data = config.data
    data.root = config_dict.placeholder(str)  # Task01_BrainTumour folder: --config.data.root=PATH
    data.layout = "msd"
    data.modality = "all"  # the 4 channels FLAIR, T1w, t1gd, T2w, each z-scored on its own
    data.classes = "all"  # edema, non-enhancing tumour, enhancing tumour (dataset.json labels)
    data.size = (240, 240)  # pixels: the volumes are 240x240x155, so no resampling
    data.normalisation = "zscore"  # MRI: over the non-zero (brain) voxels of each channel

    config.train.batch_size = 32  # slices per step
    config.al.initial_size = 500  # labelled slices at round 0 (the paper's BraTS setting)
    config.al.query_size = 100  # slices queried per round

    return default.paper_variant(config, arg, "msd_brain_tumour.py")
