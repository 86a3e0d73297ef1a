// Package readme holds the test that keeps README.md honest: it compiles
// every Go snippet of the README verbatim and runs its flows — the program
// of "Publish and consume" and the commands of "Command line" — unchanged
// on mem://, RabbitMQ, Kafka, SQS and Pub/Sub.
package readme
