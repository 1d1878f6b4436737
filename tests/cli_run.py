"""Running the ``dualnet`` command in-process, for the tests of what a user sees."""
from dualnet.cli import main


def run(capsys, *argv):
    """``main(argv)`` with every argument as a string: ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err):
    """True when stderr is exactly one ``dualnet: error:`` line and no traceback."""
    return err.count("\n") == 1 and err.startswith("dualnet: error:") and "Traceback" not in err
