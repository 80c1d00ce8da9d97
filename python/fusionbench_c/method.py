"""fusionbench_c.method: FusionBench's algorithm classes over the C library.

Every method the C library registers is here under FusionBench's class name
(TaskArithmeticAlgorithm, TiesMergingAlgorithm, DareTiesMerging, ...), built from the
registry, so the list cannot drift from the C side. Constructor arguments are FusionBench's;
they are checked by the C library when the object is made, so a bad one fails before any work.
`.run(pool)` returns the merged model as the pool's models came (an nn.Module, a state dict of
torch tensors or numpy arrays); `.run(pool, path=...)` streams it to a file or folder instead
and returns the path."""
import copy
import ctypes
import json
import os

from . import _lib
from ._lib import lib, FusionBenchError
from .modelpool import BaseModelPool, _NAMES

__all__ = ["BaseAlgorithm", "load_algorithm_from_config", "algorithm_names"]


def _yaml(params):
    """Parameters as a YAML flow mapping (JSON is YAML); numpy/torch scalars become numbers."""
    def plain(v):
        if hasattr(v, "tolist"):
            return v.tolist()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v
    return json.dumps({k: plain(v) for k, v in params.items()}, allow_nan=True)


class BaseAlgorithm:
    """A merging algorithm of the C library. Subclasses name the C method (_method)."""

    _method = None

    def __init__(self, **kwargs):
        self._handle = ctypes.c_void_p()
        self.config = dict(kwargs)
        if self._method is None:
            raise TypeError("BaseAlgorithm is abstract: use a named algorithm class")
        _lib.check(lib.fb_method_create(self._method.encode(), _yaml(kwargs).encode(),
                                        ctypes.byref(self._handle)))

    @classmethod
    def _from_handle(cls, handle, config):
        self = cls.__new__(cls)
        self._handle = handle
        self.config = config
        return self

    def __del__(self):
        h = getattr(self, "_handle", None)
        if h:
            lib.fb_method_free(h)
            self._handle = None

    @property
    def method_name(self):
        """The C library's name for the method ("ties_merging")."""
        return lib.fb_method_name(self._handle).decode()

    def run(self, modelpool, path=None):
        """Merges the pool: a BaseModelPool, or a dict name -> model. With path, the merged model
        is written there (a .safetensors file, or a Hugging Face folder) and path returned."""
        if not isinstance(modelpool, BaseModelPool):
            modelpool = BaseModelPool(modelpool)
        pool, keep = modelpool._build()
        try:
            if path is not None:
                path = os.fspath(path)
                _lib.call_interruptibly(lib.fb_method_run_to_file, self._handle, pool, None,
                                        path.encode(), None)
                return path
            merged = ctypes.c_void_p()
            _lib.call_interruptibly(lib.fb_method_run, self._handle, pool, None,
                                    ctypes.byref(merged))
            return _convert(_Owned(merged), modelpool)
        finally:
            lib.fb_modelpool_free(pool)
            del keep  # the borrowed buffers may go only now

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


class _Owned:
    """A merged C model; freed when the last array viewing its memory is gone."""

    def __init__(self, handle):
        self.handle = handle

    def __del__(self):
        if self.handle:
            lib.fb_model_free(self.handle)
            self.handle = None


def _tensors(owned):
    """(name, dtype name, numpy array) for each tensor of a merged C model. Tensors the model
    owns are not copied: the arrays view its memory and keep it alive. Others (tensors the merge
    took unchanged from an input) are copied, so the result never aliases an input. bf16 comes
    back as its uint16 bits."""
    import numpy as np
    np_dtype = {"float64": np.float64, "float32": np.float32, "float16": np.float16,
                "bfloat16": np.uint16, "int64": np.int64, "int32": np.int32, "int16": np.int16,
                "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
    model = owned.handle
    for i in range(lib.fb_model_num_tensors(model)):
        t = lib.fb_model_tensor(model, i)
        name = lib.fb_tensor_name(t).decode()
        dname = _NAMES.get(lib.fb_tensor_dtype(t))
        if dname is None:
            raise FusionBenchError(f"tensor '{name}': its dtype has no numpy equivalent")
        ndim = lib.fb_tensor_ndim(t)
        shape = tuple(lib.fb_tensor_shape(t)[k] for k in range(ndim))
        dt = np.dtype(np_dtype[dname])
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n == 0:
            yield name, dname, np.empty(shape, dtype=dt)
            continue
        own = lib.fb_tensor_mutable_data(t)
        if own:
            buf = (ctypes.c_char * (n * dt.itemsize)).from_address(own)
            buf._owner = owned  # the array's base is buf: the model lives as long as it
            arr = np.frombuffer(buf, dtype=dt).reshape(shape)
        else:
            data = ctypes.c_void_p()
            _lib.check(lib.fb_tensor_data(t, ctypes.byref(data)))
            buf = (ctypes.c_char * (n * dt.itemsize)).from_address(data.value)
            arr = np.frombuffer(buf, dtype=dt).reshape(shape).copy()
        yield name, dname, arr


def _convert(owned, modelpool):
    kind = modelpool._kind()
    if kind == "numpy" or kind == "path":
        import numpy as np
        out = {}
        for name, dname, arr in _tensors(owned):
            if dname == "bfloat16":  # numpy has no bfloat16: widen exactly to float32
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            out[name] = arr
        return out
    import numpy as np
    import torch
    sd = {}
    for name, dname, arr in _tensors(owned):
        if dname == "bfloat16":  # this torch has no uint16: through int16, the same bits
            t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(arr)
        sd[name] = t
    if kind == "torch":
        return sd
    # a module: a copy of the base's (else the first model's) structure whose parameters and
    # buffers are the merged tensors themselves (deepcopy is told to reuse them, not copy)
    names = list(modelpool._models)
    src = modelpool._models["_pretrained_" if "_pretrained_" in names else names[0]]
    memo = {}
    src_sd = src.state_dict(keep_vars=True)
    extra = [k for k in sd if k not in src_sd]
    if extra:  # an upscaled model (smile_upscaling) has another structure than the module
        raise ValueError(f"the result has tensors the module lacks ({extra[0]}, ...): its "
                         "structure differs from the pool's modules; give state dicts (or a "
                         "path) instead to get it")
    for key, old in src_sd.items():
        new = sd.get(key)
        if new is None:
            continue
        if new.shape != old.shape:
            raise FusionBenchError(f"merged tensor '{key}' has shape {tuple(new.shape)}, the "
                                   f"module's has {tuple(old.shape)}")
        if isinstance(old, torch.nn.Parameter):
            new = torch.nn.Parameter(new, requires_grad=old.requires_grad)
        memo[id(old)] = new
    unexpected = [k for k in sd if k not in src_sd]
    if unexpected:
        raise FusionBenchError(f"merged tensor '{unexpected[0]}' is not in the module")
    return copy.deepcopy(src, memo)


def algorithm_names():
    """{FusionBench class name: C method name} for the methods FusionBench has a class for."""
    out = {}
    for i in range(lib.fb_method_registry_count()):
        target = lib.fb_method_registry_target(i)
        if target:
            out[target.decode()] = lib.fb_method_registry_name(i).decode()
    return out


def _define_classes():
    for i in range(lib.fb_method_registry_count()):
        name = lib.fb_method_registry_name(i).decode()
        target = lib.fb_method_registry_target(i)
        summary = (lib.fb_method_registry_summary(i) or b"").decode()
        if target:
            cls = target.decode()
            doc = f"FusionBench's {cls} on the C library's `{name}`: {summary}"
        else:  # FusionBench has no class for it (mergekit's methods): named from the C name
            cls = "".join(w.capitalize() for w in name.split("_")) + "Algorithm"
            doc = f"The C library's `{name}` (FusionBench has no class for it): {summary}"
        globals()[cls] = type(cls, (BaseAlgorithm,), {"_method": name, "__module__": __name__,
                                                      "__doc__": doc})
        __all__.append(cls)


_define_classes()


def _class_for(handle):
    name = lib.fb_method_name(handle).decode()
    for cls in __all__:
        if getattr(globals()[cls], "_method", None) == name:
            return globals()[cls]
    raise FusionBenchError(f"method '{name}' has no class")


def load_algorithm_from_config(config):
    """An algorithm from a FusionBench method YAML file (its `_target_` and parameters), or from
    a dict of the same ({"_target_": "fusion_bench.method.TiesMergingAlgorithm", ...} or
    {"name": "ties_merging", ...})."""
    cfg = ctypes.c_void_p()
    if isinstance(config, dict):
        _lib.check(lib.fb_config_parse(_yaml(config).encode(), ctypes.byref(cfg)))
        params = dict(config)
    else:
        _lib.check(lib.fb_config_load(os.fspath(config).encode(), ctypes.byref(cfg)))
        params = {"config": os.fspath(config)}
    try:
        handle = ctypes.c_void_p()
        _lib.check(lib.fb_method_create_from_config(cfg, ctypes.byref(handle)))
    finally:
        lib.fb_config_free(cfg)
    return _class_for(handle)._from_handle(handle, params)
