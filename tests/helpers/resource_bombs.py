"""Hostile resource files: YAML bombs and deep nesting (the unit tests and bench/resource_files.py)."""

import textwrap

BILLION_LAUGHS = textwrap.dedent("""\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    """)


def _deep_aliases(levels: int) -> str:
    """Each level doubles the expansion: 2**levels nodes from a few hundred bytes."""
    lines = ["apiVersion: mlvisor.dev/v1alpha1", "kind: TrainingJob", "metadata: {name: bomb}", "spec:",
             "  dataset: {builtin: iris}", "  estimator:", "    class: sklearn.tree.DecisionTreeClassifier",
             "    params:", "      l0: &l0 [x, x]"]
    lines += [f"      l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


BOMBS = {
    "billion-laughs": BILLION_LAUGHS,  # 9**9 = 387 million strings
    "deep-aliases-in-a-resource": _deep_aliases(60),  # 2**60 nodes inside spec.estimator.params
    "deep-nesting": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "deep-mappings": "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n",
}
