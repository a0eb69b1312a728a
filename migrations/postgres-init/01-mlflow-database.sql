-- Run once by the postgres image when the db volume is first created (docker-compose.yml
-- mounts this folder at /docker-entrypoint-initdb.d). MLflow keeps its tracking store and
-- registry in a database of its own: its tables (and its own alembic_version) must not mix
-- with the service's, which `python -m service migrate` creates in the main database.
CREATE DATABASE mlflow OWNER forecast;
