"""Exports FusionBench's CLIP classification tasks (class names and prompt templates, facts
from fusion_bench/tasks/clip_classification/) into config/clip_tasks/<dataset>.yaml, the data
files the task pool reads. Run once per FusionBench version:

    /usr/bin/python3 tools/export_clip_tasks.py FUSION_BENCH_GIT_DIR_OR_CHECKOUT config/clip_tasks

Each module is read with ast, never imported: module-level lists of strings and of
`lambda c: f"..."` templates (the placeholder becomes {c}); simple comprehensions are
evaluated with no builtins but range/chr/str.
"""
import ast
import json
import os
import subprocess
import sys

# FusionBench's dataset config names -> (module, class-name variable), as its
# CLIPTemplateFactory maps them (the Hugging Face dataset comes from its test config).
TASKS = {
    "sun397": ("sun397", "classnames"),
    "stanford-cars": ("stanford_cars", "classnames"),
    "resisc45": ("resisc45", "classnames"),
    "eurosat": ("eurosat", "classnames"),
    "svhn": ("svhn", "classnames"),
    "gtsrb": ("gtsrb", "classnames"),
    "mnist": ("mnist", "classnames"),
    "dtd": ("dtd", "classnames"),
    "oxford_flowers102": ("flower102", "classnames"),
    "pcam": ("pcam", "classnames"),
    "fer2013": ("fer2013", "classnames"),
    "oxford-iiit-pet": ("oxford_iiit_pet", "classnames"),
    "stl10": ("stl10", "classnames"),
    "cifar100": ("cifar100", "fine_label"),
    "cifar10": ("cifar10", "classnames"),
    "food101": ("food101", "classnames"),
    "fashion_mnist": ("fashion_mnist", "classnames"),
    "emnist_letters": ("emnist_letters", "classnames"),
    "kmnist": ("kmnist", "classnames"),
    "rendered-sst2": ("rendered_sst2", "classnames"),
}


def read_source(root, rel):
    if os.path.isdir(os.path.join(root, "objects")):  # a bare git directory
        return subprocess.run(["git", "--git-dir", root, "show", "HEAD:" + rel],
                              check=True, capture_output=True, text=True).stdout
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return f.read()


def template_text(node):
    if not (isinstance(node, ast.Lambda) and len(node.args.args) == 1):
        raise ValueError("a template that is not lambda c: ...")
    arg = node.args.args[0].arg
    body = node.body
    if isinstance(body, ast.Constant) and isinstance(body.value, str):
        return body.value
    if not isinstance(body, ast.JoinedStr):
        raise ValueError("a template that is not an f-string")
    out = []
    for part in body.values:
        if isinstance(part, ast.Constant):
            out.append(part.value)
        elif (isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name)
              and part.value.id == arg and part.format_spec is None and part.conversion == -1):
            out.append("{c}")
        else:
            raise ValueError("a template with an expression other than the class name")
    return "".join(out)


def module_values(src):
    tree = ast.parse(src)
    env = {}
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)):
            continue
        name, value = stmt.targets[0].id, stmt.value
        if isinstance(value, ast.List) and value.elts and all(isinstance(e, ast.Lambda) for e in value.elts):
            env[name] = [template_text(e) for e in value.elts]
            continue
        try:
            env[name] = ast.literal_eval(value)
        except ValueError:
            code = compile(ast.Expression(value), "<module>", "eval")
            try:
                scope = dict(env, __builtins__={"range": range, "chr": chr, "str": str})
                env[name] = eval(code, scope)
            except Exception:
                pass
    return env


def yaml_str(s):
    return json.dumps(s, ensure_ascii=False)


def main():
    root, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    for task, (module, var) in TASKS.items():
        rel = f"fusion_bench/tasks/clip_classification/{module}.py"
        cfg = read_source(root, f"config/dataset/image_classification/test/{task}.yaml")
        lines = [ln.strip() for ln in cfg.splitlines()]
        hf = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("path:")]
        if not hf and "_args_:" in lines:  # `_args_: [path, name]`
            args = lines.index("_args_:")
            hf = [" ".join(ln[2:] for ln in lines[args + 1:args + 3] if ln.startswith("- "))]
        hf = hf[0] if hf else "null  # FusionBench loads it with its own function"
        env = module_values(read_source(root, rel))
        names, templates = env[var], env["templates"]
        assert all(isinstance(n, str) for n in names) and names, task
        assert all(isinstance(t, str) and "{c}" in t for t in templates) and templates, task
        with open(os.path.join(out_dir, task + ".yaml"), "w", encoding="utf-8") as f:
            f.write(f"# {task}: class names and prompt templates as FusionBench defines them\n"
                    f"# ({rel}), exported by tools/export_clip_tasks.py. {{c}} is the class name.\n")
            f.write(f"dataset: {hf}\n")
            f.write(f"classnames:  # {len(names)} classes, in label order\n")
            for n in names:
                f.write(f"  - {yaml_str(n)}\n")
            f.write("templates:\n")
            for t in templates:
                f.write(f"  - {yaml_str(t)}\n")
        print(f"{task}: {len(names)} classes, {len(templates)} templates")


if __name__ == "__main__":
    main()
