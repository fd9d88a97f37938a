"""Files and figures: affinity records (JSON/NPZ), heatmaps, the AffinityLogger callback."""
