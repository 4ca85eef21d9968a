"""nas_mtl: neural architecture search for multi-task learning — which layers should which tasks share?"""

from .backbones import Backbone, BlockInfo, create_backbone, list_backbones, register_backbone
from .balancing import Balancer, create_balancer, list_balancers, parse_balancer, register_balancer
from .baselines import train_graph
from .data import MultiTaskData, create_dataset, list_datasets, register_dataset
from .graph import SKIP, Cost, GraphError, SharingGraph, canonicalize, enumerate_trees
from .metrics import delta_m
from .network import MultiTaskNetwork
from .space import SearchSpace, list_search_spaces, load_search_space
from .study import load_study, run_baselines, run_study
from .tasks import TaskSpec, create_task
from .train import TrainConfig, TrainResult, seed_everything

__version__ = "0.1.0"

__all__ = [
    "SKIP",
    "Backbone",
    "Balancer",
    "BlockInfo",
    "Cost",
    "GraphError",
    "MultiTaskData",
    "MultiTaskNetwork",
    "SearchSpace",
    "SharingGraph",
    "TaskSpec",
    "TrainConfig",
    "TrainResult",
    "canonicalize",
    "create_backbone",
    "create_balancer",
    "create_dataset",
    "create_task",
    "delta_m",
    "enumerate_trees",
    "list_backbones",
    "list_balancers",
    "list_datasets",
    "list_search_spaces",
    "load_study",
    "parse_balancer",
    "load_search_space",
    "register_backbone",
    "register_balancer",
    "register_dataset",
    "run_baselines",
    "run_study",
    "seed_everything",
    "train_graph",
]
