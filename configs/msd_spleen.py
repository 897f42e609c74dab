"""MSD Task09 Spleen (CT): the paper's spleen setting (512x512 axial slices).

data.root is the Task09_Spleen folder (dataset.json, imagesTr/, labelsTr/). Run lines:
  python launch.py --config=configs/msd_spleen.py --config.data.root=/data/Task09_Spleen
  python launch.py --config=configs/msd_spleen.py:cpu --config.data.root=/data/Task09_Spleen
  python launch.py --config=configs/msd_spleen.py --config.data.root=/data/Task09_Spleen --config.data.size=256,256
Any config reads any layout; e.g. your own NIfTI pairs with the demo's small model:
  python launch.py --config=configs/default.py --config.data.layout=paired --config.data.root=/data/mine --config.data.size=128,128

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
    )  # Task09_Spleen folder (dataset.json): --config.data.root=PATH
    data.layout = "msd"
    data.size = (512, 512)  # pixels: the Spleen volumes' in-plane size
    data.normalisation = "ct_window"  # clip to data.ct_window, scale to [0, 1]
    data.ct_window = (-160.0, 240.0)  # HU: abdominal soft-tissue window

    config.train.batch_size = 16  # slices per step

    config.al.initial_size = 150  # labelled slices at round 0
    config.al.query_size = 50  # slices queried per round

    return default.paper_variant(config, arg, "msd_spleen.py")
