"""The outer loop (ReST-EM): its settings, the E-step callback, rewards and selection, the ledger,
the M-step's examples and losses."""

from .callback import SelfEditCallback
from .config import OuterConfig
from .ledger import Ledger
from .rewards import REWARDS, Reward, get_reward, select

__all__ = ["REWARDS", "Ledger", "OuterConfig", "Reward", "SelfEditCallback", "get_reward", "select"]
