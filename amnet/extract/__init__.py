"""Stage one: images -> frozen ResNet trunk -> the HDF5 feature cache (`amnet.cache` holds the
format, the writer and the cache's tools). Never reads a label."""
