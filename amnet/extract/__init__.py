"""Stage one: images -> frozen ResNet trunk -> the HDF5 feature cache, and the cache's tools
(info, verify, merge, relist, repair). Never reads a label."""
