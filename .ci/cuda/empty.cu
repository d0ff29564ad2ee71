// compiled in place of each candle-kernels source by nvcc-for-candle (see there)
