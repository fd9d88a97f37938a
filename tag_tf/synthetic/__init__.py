"""Built-in synthetic tasks with planted clusters, and the demo that recovers them."""

from tag_tf.synthetic.planted import (SHARED_LAYERS, PlantedTasks, planted_network,
                                      planted_tasks)

__all__ = ["PlantedTasks", "SHARED_LAYERS", "planted_network", "planted_tasks"]
