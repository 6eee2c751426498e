"""The reference trading system: four PyTorch models trained continuously on replayed EURUSD bars.

Nothing in the persistence core imports this package. Importing it is cheap; the heavy
parts (torch, the data) load in the modules that need them.
"""

from __future__ import annotations

__all__ = ["EnhancedRealtimeTrainingSystem", "TradingOrchestrator", "run_trading"]


def __getattr__(name: str):  # noqa: ANN202 - lazy exports
    if name == "EnhancedRealtimeTrainingSystem":
        from .system import EnhancedRealtimeTrainingSystem

        return EnhancedRealtimeTrainingSystem
    if name == "TradingOrchestrator":
        from .orchestrator import TradingOrchestrator

        return TradingOrchestrator
    if name == "run_trading":
        from .app import run_trading

        return run_trading
    raise AttributeError(name)
