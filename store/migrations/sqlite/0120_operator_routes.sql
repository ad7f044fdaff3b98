-- Operator routes set through `PUT /admin/routes/{host}` (issue 23): kept in the store so they
-- survive a restart and reach every edge sharing the database (config `[[routes]]` stay in the
-- config file and are never written here).
CREATE TABLE operator_routes (
    host TEXT PRIMARY KEY,
    upstream TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
