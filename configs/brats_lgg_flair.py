"""BraTS 2019 LGG, FLAIR, whole tumour: the paper's brain-tumour setting (240x240 axial slices).

data.root is the folder holding HGG/ and LGG/ (MICCAI_BraTS_2019_Data_Training). Run lines:
  python launch.py --config=configs/brats_lgg_flair.py --config.data.root=/data/MICCAI_BraTS_2019_Data_Training
  python launch.py --config=configs/brats_lgg_flair.py:cpu --config.data.root=/data/MICCAI_BraTS_2019_Data_Training
  python launch.py --config=configs/brats_lgg_flair.py --config.data.root=/data/BraTS2019 --config.data.brats.target=core
Any config reads any layout; e.g. your own NIfTI pairs with the demo's small model:
  python launch.py --config=configs/default.py --config.data.layout=paired --config.data.root=/data/mine --config.data.size=128,128
(paired: <root>/images/x.nii.gz with <root>/labels/x.nii.gz; see data.paired in configs/default.py.)

Variants: ':cpu' downsamples to 128x128 and uses a smaller U-Net (base_width 16, depth 3) for
CPUs and small GPUs; the active-learning sizes stay the paper's.
"""

from ml_collections import config_dict

from configs import default


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    config = default.paper_training(default.get_config())
    data = config.data
    data.root = config_dict.placeholder(
        str
    )  # folder holding HGG/ and LGG/: --config.data.root=PATH
    data.layout = "brats"
    data.brats.modality = "flair"  # flair | t1 | t1ce | t2
    data.brats.grades = "LGG"  # HGG | LGG | HGG,LGG
    data.brats.target = "whole"  # whole (seg > 0) | core (1, 4) | enhancing (4)
    data.size = (240, 240)  # pixels: BraTS volumes are 240x240x155, so no resampling
    data.normalisation = "zscore"  # MRI: over the non-zero (brain) voxels of each volume

    config.train.batch_size = 32  # slices per step

    config.al.initial_size = 500  # labelled slices at round 0
    config.al.query_size = 100  # slices queried per round

    return default.paper_variant(config, arg, "brats_lgg_flair.py")
