"""Dynamic convolutions beyond images: time-series classification (UCR/UEA sets bundled with aeon).

* :mod:`.data`: bundled sets, z-normalisation, the [0, 1] input map (eps k/255 = k/10 std);
* :mod:`.models`: the Wang et al. (2017) FCN-ResNet with static / DyConv1d / ODConv1d convs or gates;
* :mod:`.registration`: ``ts_<dataset>_<variant>`` registry names;
* :mod:`.train`: the CPU training recipe (Adam, seeds) and compact checkpoints;
* :mod:`.evaluate`: FGSM/PGD sweeps, attention/gate shift and the audit into the results store.
"""

from .data import DATASETS, INPUT_SPAN, TSData, eps_input, eps_std, load_timeseries
from .models import TSResNet

__all__ = ["DATASETS", "INPUT_SPAN", "TSData", "TSResNet", "eps_input", "eps_std", "load_timeseries"]
