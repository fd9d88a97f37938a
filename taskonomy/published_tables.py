"""The paper's published Taskonomy tables and how it selects from each (importable: no flags).

The files are kept as published (see ``published/PROVENANCE.md``): TAG and CS label tasks by
the original's loss keys (``ss_l``, ``depth_l``, ...), HOA by Standley's letters (``s``,
``d``, ...). Both are mapped to the task names (``segment_semantic``, ``depth_zbuffer``, ...)
when loaded, so every printed table and selection uses the names ``taskonomy.main`` uses.
"""

import os

from tag_tf import selection
from taskonomy import data

PUBLISHED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published")
# Loss key (TAG, CS files) -> task name; letter (HOA file) -> task name.
FROM_LOSS_KEYS = {key: task for task, key in data.LOSS_KEYS.items()}
FROM_LETTERS = dict(data.TASK_LETTERS)


def tables(published_dir: str = PUBLISHED) -> list:
    """The Taskonomy tables and how the paper selects from each, tasks named as in
    :data:`taskonomy.data.TASKS`."""
    return [
        selection.TableSpec("TAG", os.path.join(published_dir, "taskonomy_tag_affinity.json"),
                            rename=FROM_LOSS_KEYS),
        selection.TableSpec("CS", os.path.join(published_dir, "taskonomy_cs_affinity.json"),
                            rename=FROM_LOSS_KEYS),
        selection.TableSpec("HOA", os.path.join(published_dir, "taskonomy_hoa_pairwise.json"),
                            minimize=True, singletons="diagonal", rename=FROM_LETTERS),
    ]
