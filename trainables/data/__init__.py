"""Datasets: each yields ({modality: tensor}, label) and declares its modalities and classes."""
from trainables.data.base import DatasetBundle, ModalitySpec, MultimodalTensorDataset
from trainables.data.registry import build_dataset, dataset_names

__all__ = ["DatasetBundle", "ModalitySpec", "MultimodalTensorDataset", "build_dataset", "dataset_names"]
