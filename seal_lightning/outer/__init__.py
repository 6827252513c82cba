"""The outer loop (ReST-EM): the E-step callback, rewards and selection, the ledger, the M-step loss."""

from .callback import SelfEditCallback
from .ledger import Ledger
from .rewards import reward, select

__all__ = ["Ledger", "SelfEditCallback", "reward", "select"]
