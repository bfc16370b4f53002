import gc

gc.disable()  # start-up without the collector, as euca2kvm.cli.run does (importing the command line included)

from euca2kvm.cli import run  # noqa: E402

run()
