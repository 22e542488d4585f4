"""Hydra Optuna sweeper for mnistops (``hydra/sweeper: optuna``).

Our own plugin, because the official ``hydra-optuna-sweeper`` pins ``optuna<3``, which
conflicts with MLflow 3 / SQLAlchemy 2. Hydra finds the Sweeper class by scanning the
``hydra_plugins`` namespace package (no ``hydra_plugins/__init__.py`` on purpose), and
importing ``optuna_sweeper`` registers the config schema in Hydra's ConfigStore.
"""
