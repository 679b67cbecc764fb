// t/java/KafkaAdmin.java: creates and deletes topics, and deletes records,
// for the TAP tests (t/FaultTest.pm's topic_admin), and creates bench/consumer's topic
// with the partitions it asks for (bench/lib.sh's bench_create_topic),
// with Kafka's own Java AdminClient from the broker's jar set
// (.cache/kafka-libs/VERSION): that set has no
// kafka-topics tool (kafka.admin.TopicCommand moved to the kafka-tools
// artifact in Kafka 3.x). It uses only Admin calls that Kafka 3.9 and 4.x
// both have, so it runs with either version's jars.
//
// Run from source, no build step: java -cp '.cache/kafka-libs/VERSION/*'
// t/java/KafkaAdmin.java BOOTSTRAP.  It prints "ready", then reads commands
// on stdin, one a line, and answers each with one line, "ok" or
// "error: ...":
//   create TOPIC PARTITIONS REPLICATION_FACTOR
//   delete-records TOPIC PARTITION OFFSET   (the log start becomes OFFSET)
//   delete TOPIC
// One long-lived process per cluster, so that a test gets a topic within a
// fraction of a second when it needs it at a precise moment.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.Collections;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.RecordsToDelete;
import org.apache.kafka.common.TopicPartition;

public class KafkaAdmin {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        try (Admin admin = Admin.create(props)) {
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
            System.out.println("ready");
            System.out.flush();
            String line;
            while ((line = in.readLine()) != null) {
                String[] word = line.trim().split("\\s+");
                try {
                    if (word[0].equals("create") && word.length == 4) {
                        NewTopic topic = new NewTopic(word[1], Integer.parseInt(word[2]),
                                                      Short.parseShort(word[3]));
                        admin.createTopics(Collections.singleton(topic)).all()
                             .get(30, TimeUnit.SECONDS);
                        System.out.println("ok");
                    } else if (word[0].equals("delete") && word.length == 2) {
                        admin.deleteTopics(Collections.singleton(word[1])).all()
                             .get(30, TimeUnit.SECONDS);
                        System.out.println("ok");
                    } else if (word[0].equals("delete-records") && word.length == 4) {
                        TopicPartition partition = new TopicPartition(word[1], Integer.parseInt(word[2]));
                        admin.deleteRecords(Collections.singletonMap(partition,
                                 RecordsToDelete.beforeOffset(Long.parseLong(word[3]))))
                             .all().get(30, TimeUnit.SECONDS);
                        System.out.println("ok");
                    } else {
                        System.out.println("error: unknown command: " + line);
                    }
                } catch (Exception e) {
                    System.out.println("error: " + String.valueOf(e).replace('\n', ' '));
                }
                System.out.flush();
            }
        }
    }
}
