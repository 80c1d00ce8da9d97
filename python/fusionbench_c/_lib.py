"""The C library, through ctypes: loading it, the functions used, and errors as exceptions.

The library is found in this order: $FUSIONBENCH_C_LIB; libfusionbench.so next to this
package's installed prefix (PREFIX/lib, for `make install`); the source tree's build/ folder;
the system's loader path."""
import ctypes
import os
import threading
from ctypes import POINTER, c_char_p, c_int, c_int64, c_size_t, c_void_p

_here = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    env = os.environ.get("FUSIONBENCH_C_LIB")
    if env:
        yield env
    # PREFIX/lib/python3/dist-packages/fusionbench_c -> PREFIX/lib
    yield os.path.normpath(os.path.join(_here, "..", "..", "..", "libfusionbench.so.0"))
    yield os.path.normpath(os.path.join(_here, "..", "..", "build", "libfusionbench.so.0"))
    yield "libfusionbench.so.0"


def _load():
    errors = []
    for path in _candidates():
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise ImportError("fusionbench_c: cannot load libfusionbench.so (set FUSIONBENCH_C_LIB): "
                      + "; ".join(errors))


lib = _load()


def _sig(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)


_sig("fb_last_error", c_char_p)
_sig("fb_status_str", c_char_p, c_int)
_sig("fb_model_create", c_int, POINTER(c_void_p))
_sig("fb_model_free", None, c_void_p)
_sig("fb_model_load", c_int, c_char_p, POINTER(c_void_p))
_sig("fb_model_add_tensor_borrowed", c_int, c_void_p, c_char_p, c_int, c_int, POINTER(c_int64), c_void_p)
_sig("fb_model_num_tensors", c_int64, c_void_p)
_sig("fb_model_tensor", c_void_p, c_void_p, c_int64)
_sig("fb_tensor_name", c_char_p, c_void_p)
_sig("fb_tensor_dtype", c_int, c_void_p)
_sig("fb_tensor_ndim", c_int, c_void_p)
_sig("fb_tensor_shape", POINTER(c_int64), c_void_p)
_sig("fb_tensor_numel", c_int64, c_void_p)
_sig("fb_tensor_data", c_int, c_void_p, POINTER(c_void_p))
_sig("fb_tensor_mutable_data", c_void_p, c_void_p)
_sig("fb_dtype_size", c_size_t, c_int)
_sig("fb_modelpool_create", c_int, POINTER(c_void_p))
_sig("fb_modelpool_free", None, c_void_p)
_sig("fb_modelpool_add_model", c_int, c_void_p, c_char_p, c_void_p)
_sig("fb_modelpool_add_path", c_int, c_void_p, c_char_p, c_char_p)
_sig("fb_method_create", c_int, c_char_p, c_char_p, POINTER(c_void_p))
_sig("fb_method_create_from_config", c_int, c_void_p, POINTER(c_void_p))
_sig("fb_method_free", None, c_void_p)
_sig("fb_method_name", c_char_p, c_void_p)
_sig("fb_method_run", c_int, c_void_p, c_void_p, c_void_p, POINTER(c_void_p))
_sig("fb_method_run_to_file", c_int, c_void_p, c_void_p, c_void_p, c_char_p, c_void_p)
_sig("fb_method_registry_count", c_int)
_sig("fb_method_registry_name", c_char_p, c_int)
_sig("fb_method_registry_target", c_char_p, c_int)
_sig("fb_method_registry_summary", c_char_p, c_int)
_sig("fb_config_load", c_int, c_char_p, POINTER(c_void_p))
_sig("fb_config_parse", c_int, c_char_p, POINTER(c_void_p))
_sig("fb_config_free", None, c_void_p)
_sig("fb_interrupt", None)


class FusionBenchError(RuntimeError):
    """An error from the C library; the message names the file, tensor or key."""


def check(status, message=None):
    """Raises FusionBenchError with the C message (this thread's, unless given) on failure."""
    if status != 0:
        if message is None:
            message = lib.fb_last_error()
        raise FusionBenchError(message.decode("utf-8", "replace"))


def call_interruptibly(fn, *args):
    """Runs a long C call in a worker thread so that Ctrl-C reaches Python: the merge is asked to
    stop (fb_interrupt), its temporaries are removed, and KeyboardInterrupt is raised once the
    C call has returned. Failures raise FusionBenchError with the worker's message (C keeps one
    per thread)."""
    result = {}
    if threading.current_thread() is not threading.main_thread():
        result["status"] = fn(*args)
        check(result["status"])
        return
    done = threading.Event()

    def work():
        try:
            result["status"] = fn(*args)
            result["message"] = lib.fb_last_error()
        finally:
            done.set()

    # Completion is told by an Event, not Thread.join: a join interrupted by Ctrl-C may report a
    # live thread as finished on this Python, and the interpreter must not exit under C code.
    t = threading.Thread(target=work, daemon=True)
    launched = False
    try:
        launched = True
        t.start()
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        # ask again until it returns: a request made before the run began is cleared by it
        while launched and not done.is_set():
            lib.fb_interrupt()
            try:
                done.wait(0.05)
            except KeyboardInterrupt:
                pass
        raise
    check(result["status"], result["message"])
