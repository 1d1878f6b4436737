def add_study_args(p):
    pass
