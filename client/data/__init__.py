"""Data for a federated node: loaders (one spec string per source), the built-in
review task, partitioners across nodes, and stratified splits.

Pure Python and numpy (no torch, no Flower), except `batching`, which tokenises examples into torch batches.
"""

from sentinel.client.data.examples import Example, LabelledDataset, domains, label_counts, num_labels
from sentinel.client.data.exceptions import DataError, DataFileError, DataSpecError, MissingDependencyError
from sentinel.client.data.loaders import KNOWN_SCHEMES, load_examples, load_labelled_dataset
from sentinel.client.data.partition import PartitionMethod, partition
from sentinel.client.data.reviews import generate_reviews, iter_reviews
from sentinel.client.data.split import DataSplit, holdout_split, train_val_test_split

__all__ = [
    "Example",
    "LabelledDataset",
    "num_labels",
    "domains",
    "label_counts",
    "DataError",
    "DataFileError",
    "DataSpecError",
    "MissingDependencyError",
    "KNOWN_SCHEMES",
    "load_examples",
    "load_labelled_dataset",
    "PartitionMethod",
    "partition",
    "generate_reviews",
    "iter_reviews",
    "DataSplit",
    "train_val_test_split",
    "holdout_split",
]
