"""mergekit's own functions and Task.execute methods, taken from a checkout's source files
with Python's ast module (its framework, pydantic and the task graph, is not installed here):
decorators, base classes and annotations are dropped, and a namespace object stands in for a
task's `self`. torch.bernoulli calls go to a Bernoulli object whose key the caller sets, so
random masks can be the project's counter-based draws. Used by tests/reference/mergekit_own.py
and bench/mergekit_torch.py.
"""
import ast
import os
import types
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

import methods_ref as R

SRC = None  # the checkout's mergekit/ folder: set by use()


def use(checkout):
    global SRC
    SRC = os.path.join(checkout, "mergekit")


class Bernoulli:
    """torch.bernoulli(p) as u < p with the project's generator for (seed, tensor, model)."""
    key = 0

    def __call__(self, p):
        u = R.rng_uniform(self.key, p.numel()).reshape(p.shape)
        return (u < p.float()).to(p.dtype)


BERNOULLI = Bernoulli()


class TorchProxy(types.ModuleType):
    def __getattr__(self, name):
        return BERNOULLI if name == "bernoulli" else getattr(torch, name)


def load(relpath, names, extra=None):
    """The named top-level functions and classes of a mergekit file, decorators dropped."""
    tree = ast.parse(open(os.path.join(SRC, relpath)).read())
    keep = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            node.decorator_list = []
            if isinstance(node, ast.ClassDef):
                node.bases = []
                node.keywords = []
                node.body = [b for b in node.body if isinstance(b, ast.FunctionDef)] or [ast.Pass()]
            keep.append(node)
    ns = {"torch": TorchProxy("torch"), "np": np, "F": torch.nn.functional, "List": List,
          "Optional": Optional, "Dict": Dict, "Tuple": Tuple, "Union": Union, "Any": Any,
          "Literal": Any, "logging": types.SimpleNamespace(warning=lambda *a: None, info=lambda *a: None)}
    ns.update(extra or {})
    for node in ast.walk(ast.Module(body=keep, type_ignores=[])):  # annotations name its framework
        if isinstance(node, ast.FunctionDef):
            node.returns = None
            for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs:
                a.annotation = None
            for a in (node.args.vararg, node.args.kwarg):
                if a:
                    a.annotation = None
    mod = ast.fix_missing_locations(ast.Module(body=keep, type_ignores=[]))
    exec(compile(mod, relpath, "exec"), ns)
    return ns
