"""mergekit's configurations and LoRA extraction on the FusionBench-C engine (docs/mergekit.md).

    from fusionbench_c import mergekit
    mergekit.run("ties.yml", "merged")                  # as mergekit-yaml ties.yml merged
    mergekit.extract_lora("ft", "base", "adapter", max_rank=32)

Errors raise FusionBenchError with the library's one-line message; Ctrl-C stops a run and
leaves no partial output."""
import ctypes
from ctypes import POINTER, c_char_p, c_double, c_int, c_size_t, c_uint64, c_void_p

from . import _lib


class _Options(ctypes.Structure):  # fb_mergekit_options
    _fields_ = [("max_shard_bytes", c_size_t), ("random_seed", c_uint64),
                ("intermediate_dir", c_char_p), ("run", c_void_p), ("dry_run", c_int),
                ("report_path", c_char_p)]


class _LoraOptions(ctypes.Structure):  # fb_lora_extract_options
    _fields_ = [("max_rank", c_int), ("sv_epsilon", c_double),
                ("include_regexes", POINTER(c_char_p)), ("exclude_regexes", POINTER(c_char_p)),
                ("save_modules", POINTER(c_char_p)), ("embed_lora", c_int),
                ("no_distribute_scale", c_int), ("skip_undecomposable", c_int)]


_lib._sig("fb_mergekit_run", c_int, c_char_p, c_char_p, POINTER(_Options))
_lib._sig("fb_lora_extract", c_int, c_char_p, c_char_p, c_char_p, POINTER(_LoraOptions))


def _path(p):
    return None if p is None else str(p).encode()


def _strings(items):
    """A NULL-terminated char* array, or NULL for none."""
    items = [str(s).encode() for s in items]
    return (c_char_p * (len(items) + 1))(*items, None) if items else None


def run(config, out_dir, *, random_seed=0, out_shard_size=0, intermediate_dir=None,
        dry_run=False):
    """Runs mergekit configuration file `config` into the Hugging Face folder `out_dir`
    (out_shard_size in bytes, 0: 5 GB; random_seed for dare_* and della*; dry_run: validate,
    read every header, resolve every parameter, write nothing)."""
    o = _Options(max_shard_bytes=int(out_shard_size), random_seed=int(random_seed),
                 intermediate_dir=_path(intermediate_dir), dry_run=int(bool(dry_run)))
    _lib.call_interruptibly(_lib.lib.fb_mergekit_run, _path(config), _path(out_dir),
                            ctypes.byref(o))


def extract_lora(model, base_model, out_path, *, max_rank=128, sv_epsilon=0.0, include=(),
                 exclude=(), save_modules=(), embed_lora=False, distribute_scale=True,
                 skip_undecomposable=False):
    """Writes a PEFT LoRA adapter folder at out_path from the SVD of each weight's difference
    between `model` and `base_model`, as mergekit-extract-lora does (include/exclude: regular
    expressions searched in module names)."""
    inc, exc, save = _strings(include), _strings(exclude), _strings(save_modules)
    o = _LoraOptions(max_rank=int(max_rank), sv_epsilon=float(sv_epsilon),
                     include_regexes=inc, exclude_regexes=exc, save_modules=save,
                     embed_lora=int(bool(embed_lora)),
                     no_distribute_scale=int(not distribute_scale),
                     skip_undecomposable=int(bool(skip_undecomposable)))
    _lib.call_interruptibly(_lib.lib.fb_lora_extract, _path(model), _path(base_model),
                            _path(out_path), ctypes.byref(o))
