"""The tensor-program IR: expressions, buffers, blocks, loops, PrimFuncs, schedules and codegen."""
