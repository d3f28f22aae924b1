//! The log4j2 configurations the operator ships in its storm.yaml ConfigMaps, found by Storm
//! through `storm.log4j2.conf.dir` (storm.py passes `<dir>/cluster.xml` to the daemons, the
//! supervisor passes `<dir>/worker.xml` to the workers and their LogWriter).
//!
//! Storm's own `log4j2/cluster.xml` and `worker.xml` write only to files under
//! `storm.log.dir`, so `kubectl logs` shows one line. These keep the same files (the log viewer
//! and `workers-artifacts` still work) and add a console appender:
//! - a daemon (supervisor, Nimbus, UI) logs to its stdout, the container's log;
//! - a worker logs to its stdout, which its LogWriter reads and logs again (logger `STDERR`,
//!   message only) to the LogWriter's stdout, which the supervisor reads and logs as
//!   `Worker Process <id>:<line>`. So the worker's lines, and whatever topology code prints,
//!   reach the supervisor container's log.

/// File name of the daemons' configuration.
pub const CLUSTER_XML_NAME: &str = "cluster.xml";
/// File name of the workers' configuration.
pub const WORKER_XML_NAME: &str = "worker.xml";

/// The daemons' configuration: Storm's `A1` file appender plus the console.
pub const CLUSTER_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by workerpool-operator: Storm's cluster.xml files, plus the console. -->
<configuration monitorInterval="60" shutdownHook="disable">
  <properties>
    <property name="pattern">%d{yyyy-MM-dd HH:mm:ss.SSS} %c{1.} %t [%p] %msg%n</property>
  </properties>
  <appenders>
    <Console name="CONSOLE" target="SYSTEM_OUT">
      <PatternLayout pattern="${pattern}"/>
    </Console>
    <RollingFile name="A1" fileName="${sys:storm.log.dir}/${sys:logfile.name}"
                 filePattern="${sys:storm.log.dir}/${sys:logfile.name}.%i.gz">
      <PatternLayout charset="UTF-8" pattern="${pattern}"/>
      <Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies>
      <DefaultRolloverStrategy max="9"/>
    </RollingFile>
  </appenders>
  <loggers>
    <Logger name="org.apache.storm.logging.filters.AccessLoggingFilter" level="info" additivity="false">
      <AppenderRef ref="A1"/>
    </Logger>
    <Logger name="org.apache.storm.logging.ThriftAccessLogger" level="info" additivity="false">
      <AppenderRef ref="A1"/>
    </Logger>
    <root level="info">
      <AppenderRef ref="A1"/>
      <AppenderRef ref="CONSOLE"/>
    </root>
  </loggers>
</configuration>
"#;

/// The workers' configuration: Storm's worker files plus the console (see the module docs).
pub const WORKER_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by workerpool-operator: Storm's worker.xml files, plus the console. -->
<configuration monitorInterval="60" shutdownHook="disable">
  <properties>
    <property name="pattern">%d{yyyy-MM-dd HH:mm:ss.SSS} %c{1.} %t [%p] %msg%n</property>
    <property name="dir">${sys:workers.artifacts}/${sys:storm.id}/${sys:worker.port}</property>
  </properties>
  <appenders>
    <Console name="CONSOLE" target="SYSTEM_OUT">
      <PatternLayout pattern="${pattern}"/>
    </Console>
    <Console name="CONSOLE-RAW" target="SYSTEM_OUT">
      <PatternLayout pattern="%msg%n"/>
    </Console>
    <RollingFile name="A1" fileName="${dir}/${sys:logfile.name}" filePattern="${dir}/${sys:logfile.name}.%i.gz">
      <PatternLayout charset="UTF-8" pattern="${pattern}"/>
      <Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies>
      <DefaultRolloverStrategy max="9"/>
    </RollingFile>
    <RollingFile name="STDERR" fileName="${dir}/${sys:logfile.name}.err" filePattern="${dir}/${sys:logfile.name}.err.%i.gz">
      <PatternLayout pattern="%msg%n"/>
      <Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies>
      <DefaultRolloverStrategy max="4"/>
    </RollingFile>
    <RollingFile name="METRICS" fileName="${dir}/${sys:logfile.name}.metrics" filePattern="${dir}/${sys:logfile.name}.metrics.%i.gz">
      <PatternLayout pattern="%d %-8r %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="2 MB"/></Policies>
      <DefaultRolloverStrategy max="9"/>
    </RollingFile>
  </appenders>
  <loggers>
    <root level="info">
      <AppenderRef ref="A1"/>
      <AppenderRef ref="CONSOLE"/>
    </root>
    <Logger name="org.apache.storm.metric.LoggingMetricsConsumer" level="info" additivity="false">
      <AppenderRef ref="METRICS"/>
    </Logger>
    <Logger name="STDERR" level="info" additivity="false">
      <AppenderRef ref="STDERR"/>
      <AppenderRef ref="CONSOLE-RAW"/>
    </Logger>
    <Logger name="STDOUT" level="info" additivity="false">
      <AppenderRef ref="STDERR"/>
      <AppenderRef ref="CONSOLE-RAW"/>
    </Logger>
  </loggers>
</configuration>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_configurations_log_to_the_console_and_keep_storms_files() {
        for xml in [CLUSTER_XML, WORKER_XML] {
            assert!(xml.contains(r#"<Console name="CONSOLE" target="SYSTEM_OUT">"#));
            assert!(xml.contains(r#"<AppenderRef ref="CONSOLE"/>"#));
            assert!(xml.contains(r#"<RollingFile name="A1""#));
            assert_eq!(xml.matches("<configuration").count(), 1);
            assert_eq!(xml.matches("</configuration>").count(), 1);
        }
        assert!(CLUSTER_XML.contains("${sys:storm.log.dir}/${sys:logfile.name}"));
        assert!(WORKER_XML.contains("${sys:workers.artifacts}/${sys:storm.id}/${sys:worker.port}"));
        // The LogWriter's relay (logger STDERR) prints the worker's lines as they are.
        assert!(WORKER_XML.contains(r#"<Logger name="STDERR" level="info" additivity="false">"#));
    }
}
