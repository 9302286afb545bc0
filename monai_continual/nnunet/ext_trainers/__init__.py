"""The folder ``nnUNet_extTrainer`` points at (``python -m monai_continual.nnunet trainer-path``)."""
