"""Experiment configs: the schema and its validation (`schema`), the building blocks of the
config files in configs/ (`build`), and loading those files by path (`files`)."""
from normrnn.config.files import (apply_overrides, load_config, load_config_module, load_sweep,
                                  parse_args_and_overrides)
from normrnn.config.schema import ConfigError, check_resume, upgrade_saved_config, validate

__all__ = ['ConfigError', 'apply_overrides', 'check_resume', 'load_config', 'load_config_module',
           'load_sweep', 'parse_args_and_overrides', 'upgrade_saved_config', 'validate']
