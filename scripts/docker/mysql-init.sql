-- docker-compose.kafka.yml: the image creates `platform` with rights on `platform` only;
-- tests create their own databases, as with scripts/infra's MariaDB.
GRANT ALL PRIVILEGES ON *.* TO 'platform'@'%' WITH GRANT OPTION;
FLUSH PRIVILEGES;
