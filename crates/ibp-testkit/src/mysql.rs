use sqlx::Connection;

/// A fresh MariaDB/MySQL database for one test, dropped when the value is dropped.
///
/// The server comes from `IBP_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`, the
/// machine's MariaDB); the database gets a unique name `ibp_test_<pid>_<n>_<nanos>`.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    /// The database name.
    pub name: String,
    /// A connection URL for the database.
    pub url: String,
    dropped: bool,
}

/// The admin URL of the test MySQL server.
pub fn admin_url() -> String {
    std::env::var("IBP_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
}

impl TestDatabase {
    /// Creates the database. Fails with a message naming the server when it is unreachable.
    pub async fn create() -> Result<TestDatabase, String> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let admin = admin_url();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("ibp_test_{}_{n}_{nanos}", std::process::id());
        let mut conn = sqlx::MySqlConnection::connect(&admin).await.map_err(|e| {
            format!("cannot reach the test MySQL server at {admin} (set IBP_TEST_MYSQL_URL): {e}")
        })?;
        sqlx::query(&format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
        ))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("cannot create database {name}: {e}"))?;
        let _ = conn.close().await;
        let url = format!("{}/{name}", admin.trim_end_matches('/'));
        Ok(TestDatabase {
            admin_url: admin,
            name,
            url,
            dropped: false,
        })
    }

    /// Runs one statement in the database, as another program would.
    pub async fn execute(&self, sql: &str) -> Result<(), String> {
        let mut s = self.session().await?;
        s.execute(sql).await
    }

    /// A session of its own on the database (kept open: `LOCK TABLES` holds while it lives).
    pub async fn session(&self) -> Result<Session, String> {
        let conn = sqlx::MySqlConnection::connect(&self.url)
            .await
            .map_err(|e| format!("connect to {}: {e}", self.name))?;
        Ok(Session { conn })
    }

    /// Drops the database now.
    pub async fn drop_now(mut self) {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await;
    }
}

async fn drop_database(admin: &str, name: &str) {
    if let Ok(mut conn) = sqlx::MySqlConnection::connect(admin).await {
        // A test that failed mid-transaction leaves its connections holding locks: do not
        // wait for them forever (the database is then left for a later cleanup).
        let _ = sqlx::query("SET SESSION lock_wait_timeout = 5")
            .execute(&mut conn)
            .await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop can run inside a runtime; use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&admin, &name));
            }
        })
        .join();
    }
}

/// One connection to a test database.
#[derive(Debug)]
pub struct Session {
    conn: sqlx::MySqlConnection,
}

impl Session {
    /// Runs one statement.
    pub async fn execute(&mut self, sql: &str) -> Result<(), String> {
        sqlx::query(sql)
            .execute(&mut self.conn)
            .await
            .map(|_| ())
            .map_err(|e| format!("{sql}: {e}"))
    }
}
