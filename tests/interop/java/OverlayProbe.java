// grpc-java against the gateway, with the channel docs/calling.md "Where the gateway listens" gives for TCP
// loopback, `Grpc.newChannelBuilder(target, InsecureChannelCredentials.create())`, and nothing more.
// run.sh compiles and runs it (Debian's libgrpc-java, 1.41.3, on the JDK) for each overlay on TCP:
//
//   java OverlayProbe TARGET
//
// It calls grpc.health.v1.Health/Check and graph.print.v1.PrintJobService/Cancel (once OK, once
// NOT_FOUND with error details), with raw protobuf bytes so that no generated code is needed, and
// exits 1 on any other outcome.
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientInterceptors;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.MetadataUtils;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.concurrent.TimeUnit;

public final class OverlayProbe {
  private static final MethodDescriptor.Marshaller<byte[]> BYTES =
      new MethodDescriptor.Marshaller<byte[]>() {
        @Override
        public InputStream stream(byte[] value) {
          return new ByteArrayInputStream(value);
        }

        @Override
        public byte[] parse(InputStream in) {
          try {
            return in.readAllBytes();
          } catch (IOException e) {
            throw new UncheckedIOException(e);
          }
        }
      };

  private static MethodDescriptor<byte[], byte[]> unary(String name) {
    return MethodDescriptor.<byte[], byte[]>newBuilder()
        .setType(MethodDescriptor.MethodType.UNARY)
        .setFullMethodName(name)
        .setRequestMarshaller(BYTES)
        .setResponseMarshaller(BYTES)
        .build();
  }

  // graph.print.v1.CancelRequest{printer_id = 1, print_job_id = 2}, both short strings.
  private static byte[] cancelRequest(String printerId, String printJobId) {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    int number = 1;
    for (String value : new String[] {printerId, printJobId}) {
      byte[] bytes = value.getBytes(StandardCharsets.UTF_8);
      out.write(number++ << 3 | 2);
      out.write(bytes.length);
      out.write(bytes, 0, bytes.length);
    }
    return out.toByteArray();
  }

  private static CallOptions deadline() {
    return CallOptions.DEFAULT.withDeadlineAfter(10, TimeUnit.SECONDS);
  }

  private static void check(boolean condition, String message) {
    if (!condition) {
      System.out.println("FAILED: " + message);
      System.exit(1);
    }
  }

  public static void main(String[] args) throws InterruptedException {
    check(args.length == 1, "usage: java OverlayProbe TARGET");
    ManagedChannel channel =
        Grpc.newChannelBuilder(args[0], InsecureChannelCredentials.create()).build();
    try {
      byte[] health =
          ClientCalls.blockingUnaryCall(
              channel, unary("grpc.health.v1.Health/Check"), deadline(), new byte[0]);
      check(Arrays.equals(health, new byte[] {8, 1}), "health: " + Arrays.toString(health));
      System.out.println("health: SERVING");

      Metadata token = new Metadata();
      token.put(
          Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer java-token");
      Channel withToken =
          ClientInterceptors.intercept(channel, MetadataUtils.newAttachHeadersInterceptor(token));
      MethodDescriptor<byte[], byte[]> cancel = unary("graph.print.v1.PrintJobService/Cancel");
      byte[] ok =
          ClientCalls.blockingUnaryCall(
              withToken, cancel, deadline(), cancelRequest("any-job-printer", "java-1"));
      check(ok.length == 0, "Cancel answered " + ok.length + " bytes, not an empty CancelResponse");
      System.out.println("Cancel any-job-printer/java-1: OK");

      try {
        ClientCalls.blockingUnaryCall(
            withToken, cancel, deadline(), cancelRequest("printer-1", "no-such-job"));
        check(false, "Cancel printer-1/no-such-job succeeded");
      } catch (StatusRuntimeException e) {
        check(e.getStatus().getCode() == Status.Code.NOT_FOUND, "expected NOT_FOUND: " + e.getStatus());
        Metadata.Key<byte[]> details =
            Metadata.Key.of("grpc-status-details-bin", Metadata.BINARY_BYTE_MARSHALLER);
        check(e.getTrailers() != null && e.getTrailers().get(details) != null, "no error details");
        System.out.println("Cancel printer-1/no-such-job: NOT_FOUND, with details");
      }
    } catch (StatusRuntimeException e) {
      check(false, e.getStatus().toString());
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }
}
