"""fusionbench_c: FusionBench's model pools and merging algorithms on the FusionBench-C engine.

    from fusionbench_c.modelpool import BaseModelPool
    from fusionbench_c.method import SimpleAverageAlgorithm, TaskArithmeticAlgorithm

    pool = BaseModelPool({"_pretrained_": base, "model_1": m1, "model_2": m2})
    merged = TaskArithmeticAlgorithm(scaling_factor=0.3).run(pool)

See docs/python.md."""
from ._lib import FusionBenchError
from .modelpool import BaseModelPool
from . import mergekit, method
from .method import load_algorithm_from_config

__all__ = ["BaseModelPool", "FusionBenchError", "load_algorithm_from_config", "mergekit",
           "method"]
