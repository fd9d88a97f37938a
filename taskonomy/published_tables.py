"""The paper's published Taskonomy tables and how it selects from each (importable: no flags)."""

import os

from tag_tf import selection

PUBLISHED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published")


def tables(published_dir: str = PUBLISHED) -> list:
    """The Taskonomy tables and how the paper selects from each."""
    return [
        selection.TableSpec("TAG", os.path.join(published_dir, "taskonomy_tag_affinity.json")),
        selection.TableSpec("CS", os.path.join(published_dir, "taskonomy_cs_affinity.json")),
        selection.TableSpec("HOA", os.path.join(published_dir, "taskonomy_hoa_pairwise.json"),
                            minimize=True, singletons="diagonal"),
    ]
