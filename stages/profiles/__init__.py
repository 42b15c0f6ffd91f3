"""CPU profiles: the CPUs a device class runs on, and running a model on any of them from an
x86 build machine (natively where this machine is one, else under QEMU user-mode emulation).

A profile is data (params.yaml `profiles:`); emulation checks numerics, never speed."""
