CREATE OR REPLACE PACKAGE orders_pkg AS
  PROCEDURE sync_orders;
  FUNCTION count_orders RETURN NUMBER;
END orders_pkg;
