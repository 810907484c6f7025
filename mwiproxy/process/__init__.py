"""Process plumbing shared by every long-running command: signals (reload, drain),
sd_notify, the pid file and the data dir lock."""
