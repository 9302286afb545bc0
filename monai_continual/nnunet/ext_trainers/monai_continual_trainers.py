"""Our trainers where nnU-Net's ``nnUNet_extTrainer`` lookup finds them (point it at this folder)."""

from monai_continual.nnunet.trainers import *  # noqa: F401,F403
from monai_continual.nnunet.trainers import TRAINERS

__all__ = list(TRAINERS)
