"""fusionbench_c.modelpool: FusionBench's BaseModelPool over the C library.

A pool maps names to models: torch.nn.Module objects, state dicts (torch tensors or numpy
arrays), or paths (a .safetensors file, a pytorch_model.bin, a Hugging Face folder or a model id
in the local hub cache). "_pretrained_" is the base model, as in FusionBench. In-memory tensors
are handed to C without a copy when they are contiguous CPU tensors; others are made so first."""
from . import _lib
from ._lib import lib

# torch / numpy dtype names -> fb_dtype (include/fusionbench.h)
_FB = {"float64": 0, "float32": 1, "float16": 2, "bfloat16": 3, "int64": 4, "int32": 5,
       "int16": 6, "int8": 7, "uint8": 8, "bool": 9}
_NAMES = {v: k for k, v in _FB.items()}


def _dtype_name(t):
    return str(t.dtype).replace("torch.", "")


class BaseModelPool:
    """Named models, as FusionBench's BaseModelPool (models=dict or a mapping)."""

    def __init__(self, models=None, **kwargs):
        if models is None:
            models = kwargs.pop("models", {})
        if kwargs:
            raise TypeError(f"BaseModelPool: unknown arguments {sorted(kwargs)}")
        self._models = dict(models)

    @property
    def model_names(self):
        """The models to merge: names other than the special ones (_pretrained_, ...)."""
        return [n for n in self._models if not (n.startswith("_") and n.endswith("_"))]

    @property
    def has_pretrained(self):
        return "_pretrained_" in self._models

    def load_model(self, name):
        return self._models[name]

    def __len__(self):
        return len(self.model_names)

    def _kind(self):
        """How results come back: "module", "torch", "numpy" or "path"."""
        first = next(iter(self._models.values()), None)
        if hasattr(first, "state_dict") and callable(first.state_dict):
            return "module"
        if isinstance(first, dict):
            v = next(iter(first.values()), None)
            return "torch" if type(v).__module__.startswith("torch") else "numpy"
        return "path"

    def _build(self):
        """A C model pool, and the buffers it borrows (kept alive by the caller)."""
        pool = _lib.c_void_p()
        _lib.check(lib.fb_modelpool_create(_lib.ctypes.byref(pool)))
        keep = []
        try:
            for name, m in self._models.items():
                if isinstance(m, (str, bytes)) or hasattr(m, "__fspath__"):
                    path = m if isinstance(m, bytes) else str(m).encode()
                    _lib.check(lib.fb_modelpool_add_path(pool, name.encode(), path))
                    continue
                sd = m.state_dict() if hasattr(m, "state_dict") and callable(m.state_dict) else m
                model = _lib.c_void_p()
                _lib.check(lib.fb_model_create(_lib.ctypes.byref(model)))
                try:
                    for key, t in sd.items():
                        self._add(model, key, t, keep)
                except BaseException:
                    lib.fb_model_free(model)
                    raise
                _lib.check(lib.fb_modelpool_add_model(pool, name.encode(), model))
        except BaseException:
            lib.fb_modelpool_free(pool)
            raise
        return pool, keep

    @staticmethod
    def _add(model, key, t, keep):
        if type(t).__module__.startswith("torch"):
            t = t.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous()
            ptr, shape, dtype = t.data_ptr(), tuple(t.shape), _dtype_name(t)
        else:
            import numpy as np
            t = np.ascontiguousarray(t)
            ptr, shape, dtype = t.ctypes.data, tuple(t.shape), str(t.dtype)
        if dtype not in _FB:
            raise TypeError(f"tensor '{key}': dtype {dtype} is not supported")
        keep.append(t)  # borrowed by C until the merge is done
        dims = (_lib.c_int64 * max(len(shape), 1))(*shape)
        _lib.check(lib.fb_model_add_tensor_borrowed(model, key.encode(), _FB[dtype], len(shape),
                                                     dims, _lib.c_void_p(ptr)))
