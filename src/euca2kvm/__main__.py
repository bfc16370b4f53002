from euca2kvm.cli import run

run()
