"""--workers N: the supervisor process, its workers, and the config state they share."""
